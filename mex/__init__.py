"""mex: what training and live inference share (labels, feature encoding, models).

This package imports none of the apps (train, export, realtime, benchmarks).
"""
__version__ = "0.1.0"
