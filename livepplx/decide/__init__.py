"""Decisions made from the statistics: CAR routing (car), DeepConf voting (deepconf) and their
calibration (calibrate). Built on the core and the wrappers; this file imports nothing.
"""
