"""The ground floor: errors, devices and precision, image I/O, colour, losses, the palette
step and image folders. Imports nothing else of artgen's."""
