"""Face data: the generated default set, readers of users' formats, and the in-memory arrays they share."""
