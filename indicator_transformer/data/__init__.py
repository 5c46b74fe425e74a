"""OHLCV sources, TA-Lib features, the feature cache, preparation and windows."""
