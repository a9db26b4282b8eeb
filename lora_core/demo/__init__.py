"""The embedded demo model's making: synthetic data, training recipes, measurements.

Nothing in the core packages (tags, formats, library, targets, patcher, engine, request, train, ui)
or in the hosts imports this package; it sits above them (`.importlinter`) and uses them like any
user would: `train` and the `lora_core train` command train its LoRAs, the app loads and measures
what it built.

    data/        the synthetic scenes, data sets and pixel checks (numpy + Pillow, no torch)
    model.py     the tiny SD1-layout base model and its training (tools/train_demo_model.py)
    refine.py    the UNet refinement passes run after model.py
    loras.py     RECIPES: the demo LoRAs, trained by the `lora_core train` command
    effects.py   what each demo LoRA should do to a picture, measured from pixels
    check.py     held-out quality of a loaded demo handle (tools/install_demo_assets.py, tests)

The built files ship in `lora_core/app/demo_assets/` (tools/install_demo_assets.py); the app reads
them with `lora_core.app.demo_pack` and `lora_core.app.demo`, which do not import this package.
"""
