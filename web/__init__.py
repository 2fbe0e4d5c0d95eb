"""HTTP faces of the game: bet API gateway, operator views, reference wallet, bots."""
