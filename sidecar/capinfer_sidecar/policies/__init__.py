"""Pure power-cap controllers: observations in, knob settings out, time passed in."""
