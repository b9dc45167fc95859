"""The node process: one per machine. It finds peers, keeps the cluster state, serves HTTP, and
supervises the runner processes of the model instances placed on this machine."""
