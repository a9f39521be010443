"""Developer tools run from the repository root: generators of shipped files (`make
generate`). Not installed; the tests check that what they generate is current."""
