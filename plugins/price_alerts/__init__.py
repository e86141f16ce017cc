"""The "Price alerts" page of the Airflow UI (see ``plugins/price_alerts_plugin.py``)."""
