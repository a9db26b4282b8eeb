"""Where the webui keeps things. Tests point these at a temporary folder via `configure`."""
import os

script_path = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
data_path = script_path
models_path = os.path.join(data_path, "models")


def configure(root):
    global data_path, models_path
    data_path = str(root)
    models_path = os.path.join(data_path, "models")
