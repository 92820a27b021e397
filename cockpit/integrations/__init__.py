"""Callbacks that record a framework's training as a cockpit run (built on cockpit.track).

- ``cockpit.integrations.lightning.CockpitCallback`` for PyTorch Lightning
  (``pip install 'cockpit[lightning]'``);
- ``cockpit.integrations.huggingface.CockpitCallback`` for the Hugging Face ``Trainer``
  (``pip install 'cockpit[transformers]'``).

Importing this package imports neither framework nor torch.
"""
