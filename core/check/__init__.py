"""Checking a job's preset before the cluster: real-size models on the meta device, the places
where two parts must agree, and the peak accelerator memory per worker against the GPU it gets."""
