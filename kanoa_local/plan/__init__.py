"""Planning: which model, precision and vLLM settings fit a machine, and why.

Pure functions of pydantic inputs (a HardwareProfile, a Catalog, a PlanRequest): planning for a
GPU you do not have is the same call fed a recorded profile.
"""

from .fit import Candidate, PlanRequest, PlanResult, Settings, plan

__all__ = ["Candidate", "PlanRequest", "PlanResult", "Settings", "plan"]
