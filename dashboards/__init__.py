"""The cmrops Streamlit dashboard: ``app.py`` (router), ``data.py`` (cached loaders), ``pages/``."""
