"""Tools around the pipeline, outside its library: nothing in petlab/ or stages/ imports them."""
