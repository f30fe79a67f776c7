# Sourced by the test-host scripts: a network namespace joined to this one by a veth pair.
# The rule for test networks: private addresses, no default route, traffic stays on this machine.

# netns_add NS HOST_IF NS_IF NS_CIDR  -> creates NS (idempotent); the caller sets up HOST_IF
# (an address, or a bridge port). Returns 1 when NS already existed.
netns_add() {
  local ns=$1 hif=$2 nif=$3 cidr=$4
  ip netns list | grep -qw "$ns" && return 1
  ip netns add "$ns"
  ip link add "$hif" type veth peer name "$nif"
  ip link set "$nif" netns "$ns"
  ip netns exec "$ns" ip addr add "$cidr" dev "$nif"
  ip netns exec "$ns" ip link set "$nif" up
  ip netns exec "$ns" ip link set lo up
}
