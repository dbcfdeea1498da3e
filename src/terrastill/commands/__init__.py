"""One module per CLI sub-command; each stays thin and calls the library."""
