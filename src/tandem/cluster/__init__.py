"""The cluster: who is here (discovery), what they have (profile, topology), what everyone agrees
on (state), and where a model goes (placement). Topology, state and placement are pure Python."""
