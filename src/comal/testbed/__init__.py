"""An exactly measurable testbed: a real transformer policy on an enumerable response space."""
