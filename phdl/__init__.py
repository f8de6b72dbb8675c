"""phdl: PhDLspec, a gradient-regularised transformer emulator of stellar spectra and a label fitter."""

__version__ = "0.1.0"
