"""The Textual terminal app."""


def run_app(workspace: str | None, tensorboard: str | None = None) -> int:
    import gc

    # Until the first frame is out nothing the start allocates is garbage (modules, classes,
    # styles, widgets): the collector's passes over them were ~15% of the start's CPU. The
    # app turns it back on after the first frame, with those objects frozen out of its
    # passes for good (gc.freeze), which also makes every later pass cheaper.
    gc.disable()
    try:
        from cockpit.app.main import CockpitApp
        from engine.torchfree.runfolder import resolve_workspace

        app = CockpitApp(resolve_workspace(workspace))
        app.resume_gc = True
        if tensorboard:  # `cockpit --tensorboard DIR`: its runs next to the workspace's
            from cockpit.tensorboard import TensorBoardDir

            app.watcher.sources = (TensorBoardDir(tensorboard),)
        app.run()
    finally:
        gc.enable()
    live = app.live_count()
    if live:  # quitting never stops a run: say where they went
        print(
            f"{live} run{'s' if live > 1 else ''} still going in {app.workspace} — `cockpit` shows "
            f"{'them' if live > 1 else 'it'} again, `cockpit ls` lists them"
        )
    return 0
