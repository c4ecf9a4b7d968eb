"""Pure status functions: observations in, status out. No API calls, no clocks (time is passed in)."""
