"""The Textual terminal app."""


def run_app(workspace: str | None) -> int:
    from cockpit.app.main import CockpitApp
    from engine.runfolder import resolve_workspace

    CockpitApp(resolve_workspace(workspace)).run()
    return 0
