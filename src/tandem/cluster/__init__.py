"""The cluster: who is here (discovery), what they have (topology), what everyone agrees on
(state), who decides (election), and where a model goes (placement). Pure Python: no torch."""
