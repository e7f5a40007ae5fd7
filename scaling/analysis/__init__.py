"""Scaling-law analysis of sweep results: honest compute points and frontiers (points), law fits with
bootstrap intervals (fits), compute-efficiency multipliers (multipliers), figures (figures), and the
report of ``scaling analyze`` (report)."""
