"""Test-session settings."""
import torch

# The suite's networks are tiny: one intra-op thread is faster than two (no thread hand-off per op)
# and keeps timings steady on CI's 2 cores.
torch.set_num_threads(1)
