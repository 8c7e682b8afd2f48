"""advinf's built-in plugins, registered through the ``advinf`` entry-point group like any third party's."""
