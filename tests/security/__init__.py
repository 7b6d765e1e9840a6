"""Attacks on Podium's promises, played over real loopback HTTP (see README "Security model")."""
