"""Routing analysis across checkpoints (OLMoE §5 style): collect → metrics (JSON) → plots/report.

``collect`` runs checkpoints over one fixed token sample and stores routing decisions as
``.npz``; ``metrics`` turns them into a JSON document with pure numpy; ``plots`` draws figures
and an HTML report from that JSON alone; ``run.analyze_run`` chains the three.
"""
