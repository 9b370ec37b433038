"""Policies: what a workload may read, write, reach and inherit, and why each answer was given.

Layers (builtin → user → every project krate.toml → --policy FILE → flags) compile into
one immutable EffectivePolicy whose `decide_*` methods are pure and fast. This
package never prints and never reads os.environ: the CLI passes values in.
"""

from krate.policy.decide import EffectivePolicy
from krate.policy.layers import effective_policy, find_project_file, find_project_files
from krate.policy.model import Decision, Flags, Limits, PolicyError

__all__ = [
    "Decision",
    "EffectivePolicy",
    "Flags",
    "Limits",
    "PolicyError",
    "effective_policy",
    "find_project_file",
    "find_project_files",
]
