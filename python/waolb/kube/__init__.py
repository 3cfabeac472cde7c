"""The Kubernetes API: objects (field checks), resources, the client, REST calls, reflectors.

Import from the submodules: this package imports none of them, so that reading the command line
or an object's fields does not load the Kubernetes client.
"""
