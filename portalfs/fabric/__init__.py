"""A device on a fabric: hub membership, edges, the swarm, sync and sharing."""
