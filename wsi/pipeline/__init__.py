"""One module per CLI verb: ``tile``, ``embed`` (local and Ray runners), ``train`` /
``predict`` / ``heatmap`` runs and ``demo``, over the layers below.
"""
