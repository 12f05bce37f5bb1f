"""What the tests share: tiny synthetic fleets (``fleet``, also the ``tiny_fleet`` pytest plugin),
tiny models and fits (``tiny_module``, ``tiny_fit``), W&B offline run readers (``wandb_files``), and
callbacks that training subprocesses load by class path (``window_recorder``, ``pace``)."""
