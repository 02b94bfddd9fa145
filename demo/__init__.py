"""`pixio-robot demo`: the whole toolkit in one command, on the bundled weights, on a CPU.

Scripted demonstrations of one task -> features of the bundled Pixio encoder (cached) ->
a CortexBench policy head -> its success rate in simulation -> a multi-view scene
reconstructed by the bundled head -> a summary. The package sits on top of the others: it only
calls their public functions, so everything it does can also be done command by command.
"""
