"""autocore: the MQTT gateway of the AutoCore vehicle-automation system."""

__version__ = "0.1.0"

__all__ = ["__version__"]
