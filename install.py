"""Run by AUTOMATIC1111 (launch.py) before start-up: install what lora_core needs and the webui
lacks. torch, diffusers-free LDM models, gradio and fastapi come with the webui; only light
packages are checked here, and nothing is installed that could replace the webui's torch.
"""
import launch

# import name -> pip requirement
REQUIREMENTS = {
    "safetensors": "safetensors>=0.4",
    "numpy": "numpy",
    "PIL": "pillow",
    "tqdm": "tqdm",
}

for module_name, requirement in REQUIREMENTS.items():
    if not launch.is_installed(module_name):
        launch.run_pip(f"install {requirement}", f"{requirement} for lora_core")
