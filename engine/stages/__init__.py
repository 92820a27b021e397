"""One module per stage of the ladder; the registry and settings are in engine.torchfree.ladder."""
