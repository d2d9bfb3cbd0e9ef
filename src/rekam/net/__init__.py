"""Node-to-node HTTP: authenticated requests, a peer API under ``/peer``, and its client."""
