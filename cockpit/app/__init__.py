"""The Textual terminal app."""


def run_app(workspace: str | None, tensorboard: str | None = None) -> int:
    from cockpit.app.main import CockpitApp
    from engine.torchfree.runfolder import resolve_workspace

    app = CockpitApp(resolve_workspace(workspace))
    if tensorboard:  # `cockpit --tensorboard DIR`: its runs next to the workspace's
        from cockpit.tensorboard import TensorBoardDir

        app.watcher.sources = (TensorBoardDir(tensorboard),)
    app.run()
    live = app.live_count()
    if live:  # quitting never stops a run: say where they went
        print(
            f"{live} run{'s' if live > 1 else ''} still going in {app.workspace} — `cockpit` shows "
            f"{'them' if live > 1 else 'it'} again, `cockpit ls` lists them"
        )
    return 0
