"""The fleet's job store: one Redis shared by every worker of every host."""
