"""The tools around the loss: check_loader (data), the distributed loss and batch check
(distributed), patching torch's loss (patching), the CPU gradient cache (memory).

They use the core package (validated_loss's functional, checks, hints, errors, _ops); the core never
imports them. Their public import paths stay validated_loss.data, .distributed, .patching and
.memory (modules that re-export these).
"""
