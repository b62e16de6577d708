"""What people see: the Rich gauge (gauge), the token heatmap (heatmap), the calibration plot
(calibration_plot) and the terminal-safe text they share (textsafe). This file imports nothing.
"""
