"""terrastill: from geolocated field observations to a deployed, compute-efficient map model."""

__version__ = "0.1.0"
