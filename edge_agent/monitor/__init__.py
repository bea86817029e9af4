"""Knowing when a model goes wrong in the field (docs/monitoring.md).

    reference   the statistics a bundle carries (computed by the converter, recomputed on the device)
    drift       a sliding window of live frames scored against the reference with PSI
    shadow      the new model answering live frames beside the active one before a switch
    agreement   what "the same answer" means per output kind (top-1, matched boxes)
    watch       the agent's wiring of drift and shadow onto its live feed
"""
