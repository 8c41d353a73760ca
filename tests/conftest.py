"""Tests share the two cores with other work: at most two threads each."""
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))
