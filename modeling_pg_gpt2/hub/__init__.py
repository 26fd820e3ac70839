"""Publishing a trained folder to the Hugging Face Hub (`push_to_hub.py`), after loading it as a stranger would."""
