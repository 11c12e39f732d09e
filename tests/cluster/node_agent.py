"""Entry point of a node agent: ``python -m tests.cluster.node_agent CONFIG.json`` (see kubelet.py)."""

from tests.cluster.kubelet import main

if __name__ == "__main__":
    main()
