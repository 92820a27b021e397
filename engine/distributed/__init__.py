"""DDP under torchrun: ``launch`` is the engine's side (start torchrun, pass signals on, wait,
read rank 0's result); ``rank`` is what runs on each rank (join the process group, build the
run's context, run the stage's ``run_rank``). Stages import neither: they get a ``Ranks``
object and apply it to their model and sampler."""
