"""Checks that diagnose a setup from evidence, without training: what the model outputs
against what the loss expects (``contracts``), train vs val input statistics (``datastats``),
parameters the optimizer never moves and activations dead at init (``health``), and
randomness in eval mode (``randomness``). The stages call them; each returns ``Check``s."""
