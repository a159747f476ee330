"""Reading logs: the tail reader, the formats a user may point at, and the file-event bridge."""
