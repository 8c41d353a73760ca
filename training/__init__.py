"""Training of the two stages: `vqgan` (stage 1: the tokenizer), `transformer` (stage 2: masked
visual token modeling on its tokens) and `engine`, the run skeleton both share (flags, resume and
save paths, RNG state, distributed set-up, LR schedule, sampler, run log). The command lines are
training_vqgan.py and training_transformer.py."""
